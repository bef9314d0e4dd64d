# One image for the API and the worker; the compose file picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# CPU torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
# for GPU workers.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0
COPY pyproject.toml README.md alembic.ini ./
COPY service service
COPY workers workers
COPY migrations migrations
RUN pip install -e .
RUN useradd --create-home cloze && mkdir -p /data && chown cloze /data
USER cloze
ENV CLOZE_HOME=/data
EXPOSE 8000
CMD ["cloze", "api", "--host", "0.0.0.0"]
