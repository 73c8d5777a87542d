# Multi-stage: build the wheel (compiles the C++ core), then a slim runtime with just the wheel.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml CMakeLists.txt README.md ./
COPY cpp cpp
COPY python python
RUN pip wheel --no-deps -w /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
# 9002 ext_proc, 9003 gRPC health, 9090 metrics (the reference picker's ports); 8080 `igw serve`.
EXPOSE 9002 9003 9090 8080
ENTRYPOINT ["igw"]
CMD ["epp", "--help"]
