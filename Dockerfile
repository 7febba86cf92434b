# Images for a real cluster (manifests/): `docker build --target controller .` and `--target init .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# approle-init is a static PIE (`cargo release-init`, .cargo/config.toml): it starts once per pod,
# and without the dynamic loader's work its start-up takes about a third of the CPU it did.
RUN cargo build --release --locked -p approle-controller \
 && cargo release-init \
 && strip target/release/approle-controller target/release/approle-init

FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /src/target/release/approle-controller /approle-controller
USER 65532:65532
ENTRYPOINT ["/approle-controller"]

FROM gcr.io/distroless/cc-debian12:nonroot AS init
COPY --from=build /src/target/release/approle-init /approle-init
USER 65532:65532
ENTRYPOINT ["/approle-init"]
