# One image for every paystream process; the command picks the service.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY libs libs
COPY services services
COPY schemas schemas
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 paystream
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY schemas /app/schemas
ENV PATH=/app/.venv/bin:$PATH PAYSTREAM_SCHEMAS_DIR=/app/schemas PYTHONUNBUFFERED=1
USER paystream
ENTRYPOINT ["paystream"]
