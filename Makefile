# asg-batch — `make test` installs what the tests need (idempotent) and runs every check.
CARGO ?= cargo

.PHONY: test test-deps check test-kube crds bench bench-e2e kube-build kube-up kube-down image

## Install test needs, then fmt + clippy + the whole test suite.
test: test-deps check

## moto server (.venv), podman + runc + containers.conf, the busybox test image, kubectl + helm (.tools),
## the real kube-apiserver + etcd (scripts/kube-build.sh).
test-deps:
	./scripts/install-test-deps.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace --all-features
	$(MAKE) test-kube

## The controller and agent suites (their modules of the one test binary, tests/it) again, against the
## real kube-apiserver + etcd instead of the embedded server (tests/it/realkube.rs and the chart tests use
## both in every run).
KUBE_SUITES = controller_lifecycle controller_leader controller_invalid controller_examples \
              controller_aws controller_retention controller_estimates controller_events aws_iam agent_jobs \
              agent_protection agent_cli agent_docker agent_container_settings workload_control \
              agent_spot logs fault_tolerance agent_restart
test-kube:
	ASG_BATCH_TEST_SERVER=kube-apiserver $(CARGO) test --all-features --test it -- \
	    $(addsuffix ::,$(KUBE_SUITES)) commands::controller_and_agent_binaries

## Regenerate crds/, the chart's crds/ and manifests/install.yaml from the Rust types and the chart.
crds:
	ASG_BATCH_BLESS_CRDS=1 $(CARGO) test --test it -- crds::checked_in_crds_match_the_code crds::the_helm_chart_carries_the_same_crds
	ASG_BATCH_BLESS_CRDS=1 $(CARGO) test --test it -- chart::chart_lints_and_install_yaml_is_current

bench:
	$(CARGO) bench

## End-to-end figures (issue 13): release build, then `asg-batch dev` wall time and max RSS for
## 500/2,000/5,000 jobs and 3,000/10,000-child arrays, and the controller's and API server's RSS
## holding 10,000 finished jobs, each beside the fork+exec floor measured in the same run.
bench-e2e:
	./scripts/bench-e2e.sh

## Build the real kube-apiserver and etcd (pinned in tests/kube/) once; cached outside the clone.
kube-build:
	./scripts/kube-build.sh

## Start etcd + kube-apiserver on loopback; admin kubeconfig in .tools/kube/kubeconfig.
kube-up:
	./scripts/kube-up.sh

## Stop what kube-up started.
kube-down:
	./scripts/kube-down.sh

## The container image $(IMAGE):$(VERSION) (the chart's default image), with Podman from scratch: the
## release binary, the shared libraries it loads, CA certificates; non-root (65532). See Containerfile.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE ?= asg-batch
image:
	$(CARGO) build --release --bins
	./scripts/build-image.sh $${CARGO_TARGET_DIR:-target}/release/asg-batch $(IMAGE):$(VERSION)
