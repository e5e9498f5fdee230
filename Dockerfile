# One image for the operator, the router and the bidders: `hotshard operator|router|bidder`.
# Build: docker build -t hotshard:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY bidder ./bidder
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# NB: no compilers or package caches in the final image; only the wheels we built.
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && groupadd --gid 10001 hotshard \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin hotshard
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The chart runs with a read-only root filesystem; nothing here writes outside /tmp.
USER 10001:10001
ENTRYPOINT ["hotshard"]
CMD ["--help"]
