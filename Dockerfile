# Images for a real cluster (manifests/): `docker build --target controller .` and `--target init .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p approle-controller -p approle-init \
 && strip target/release/approle-controller target/release/approle-init

FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /src/target/release/approle-controller /approle-controller
USER 65532:65532
ENTRYPOINT ["/approle-controller"]

FROM gcr.io/distroless/cc-debian12:nonroot AS init
COPY --from=build /src/target/release/approle-init /approle-init
USER 65532:65532
ENTRYPOINT ["/approle-init"]
