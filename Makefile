# edgelb: the README's commands. Each target installs what it needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEB_PKGS := haproxy nginx iperf3 wrk curl netcat-openbsd iproute2 procps openssl kubectl keepalived tcpdump openssh-server openssh-client tmux nftables conntrack conntrackd util-linux bird2 frr nghttp2-client

.PHONY: native wheel image image-deps test-system demo test test-unit bench bench-l4 bench-l7 bench-cluster bench-failover bench-console lint deb-deps clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

# The HTTP/1.1 machines compiled by mypyc from their own Python (appliance.native):
# rebuilt when they change; without a C compiler the Python modules run, slower.
NATIVE := appliance/datapath/http1/_native/sources.sha256
$(NATIVE): $(STAMP) $(wildcard appliance/datapath/http1/*.py) appliance/native.py appliance/native_build.py
	$(BIN)/python -m appliance.native_build || echo "the Python modules run instead (slower)" >&2

native: $(NATIVE)

# Installs the Debian packages of $(1) that are missing, as root; otherwise runs $(2).
define apt_missing
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else $(2); fi; \
	fi
endef

# Debian packages the tests and benchmarks drive as real peers; only as root, only
# what is missing (a developer without root gets skips that say why).
deb-deps:
	$(call apt_missing,$(DEB_PKGS),echo "not root: cannot install$$missing (tests that need them will skip)")

demo: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/edgelb demo

# Runs pytest with $(1); it exits 5 when it collected no tests: a failure, not a pass.
define pytest_some
	@$(BIN)/python -m pytest -q -p no:cacheprovider $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
endef

test: $(STAMP) $(NATIVE) deb-deps
	$(call pytest_some,)

test-unit: $(STAMP) $(NATIVE)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/python -m tests.bench.kernel
	$(BIN)/python -m tests.bench.l4
	$(BIN)/python -m tests.bench.l7
	$(BIN)/python -m tests.bench.loops
	$(BIN)/python -m tests.bench.cluster
	$(BIN)/python -m tests.bench.failover
	$(BIN)/python -m tests.bench.console

bench-console: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/python -m tests.bench.console

bench-cluster: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/python -m tests.bench.cluster

bench-failover: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/python -m tests.bench.failover

bench-l4: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/python -m tests.bench.kernel
	$(BIN)/python -m tests.bench.l4

bench-l7: $(STAMP) $(NATIVE) deb-deps
	$(BIN)/python -m tests.bench.l7
	$(BIN)/python -m tests.bench.loops
	$(BIN)/python -m tests.bench.h2

# The wheel the Ansible role installs (ansible/roles/edgelb: edgelb_wheel).
wheel: $(STAMP) $(NATIVE)
	rm -rf dist build
	$(BIN)/pip wheel -q --no-deps -w dist .

# The appliance image (images/build): Debian 12 with edgelb installed by the Ansible role.
# Root's SSH key is AUTHORIZED_KEYS, or a key made once in images/out (test-system's).
IMAGE_PKGS := debootstrap e2fsprogs fdisk extlinux syslinux-common qemu-system-x86 openssh-client
IMAGE_KEY  := images/out/admin_ed25519

image-deps:
	$(call apt_missing,$(IMAGE_PKGS),echo "make image needs root (and:$$missing)" >&2; exit 2)

image: wheel image-deps
	@mkdir -p images/out; [ -f $(IMAGE_KEY) ] || ssh-keygen -q -t ed25519 -N '' -C edgelb-admin -f $(IMAGE_KEY)
	AUTHORIZED_KEYS=$${AUTHORIZED_KEYS:-$(IMAGE_KEY).pub} images/build images/out

# Boots the image under qemu and checks it over SSH (about 10 minutes here under TCG,
# build included). Not in CI, where tests/integration/test_ansible.py runs the same role
# against localhost. The image is built with the test's VARS: a config baked in.
test-system: export VARS := tests/system/image-vars.yml
# The VM reaches the package index through qemu's user network: the machine's namespace.
test-system: export EDGELB_TEST_SHARED_NET := 1
test-system: image
	$(call pytest_some,-s tests/system)

# ruff, mypy strict, and the layer contract (pyproject.toml [tool.importlinter]).
lint: $(STAMP)
	$(BIN)/ruff check appliance tui tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) build *.egg-info $(dir $(NATIVE))
