# One image for all three roles (migrate, api, worker); docker-compose.yml picks the command.
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRAINLAB_DATABASE_URL=sqlite:////data/trainlab.db \
    TRAINLAB_DATA_DIR=/data/datasets

COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
COPY examples ./examples
# Editable, so the code finds migrations/ beside it (the schema check needs the revision scripts).
RUN pip install -e .

VOLUME ["/data"]
EXPOSE 8000
