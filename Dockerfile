# One image for every zloth service; the command picks the service (`zloth serve <name>`).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 zloth
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY services ./services
RUN pip install --no-cache-dir '.[tracing]'
USER zloth
ENV ZLOTH_DATA_DIR=/data ZLOTH_LOG_FORMAT=json
VOLUME /data
ENTRYPOINT ["zloth"]
