# Everything installs into .venv; `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint protos clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# Third-party servers for the interoperability tests, each in its own venv so their pins do not
# steer the suite's: .venv-mlserver from requirements-mlserver.txt, .venv-kserve from requirements-kserve.txt,
# .venv-mongo (a MongoDB-wire server for the MongoDB export) from requirements-mongo.txt.
THIRD_PARTY := .venv-mlserver/.installed .venv-kserve/.installed .venv-mongo/.installed

.venv-%/.installed: requirements-%.txt
	test -x .venv-$*/bin/python || $(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --disable-pip-version-check -r $<
	touch $@

# The web UI's browser test drives Debian's Chromium through Playwright (which never downloads a browser here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)

demo: $(STAMP)
	$(VENV)/bin/ovms-bench demo

test: $(STAMP) $(THIRD_PARTY) $(CHROMIUM)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate the TFS API modules from ovms_wire/protos/tfs/*.proto. grpcio-tools 1.76 emits code for
# protobuf >= 6.31, the range tritonclient[grpc] accepts; newer grpcio-tools would demand protobuf 7.
protos:
	$(PYTHON) -m venv /tmp/ovms-protogen
	/tmp/ovms-protogen/bin/pip install -q grpcio-tools==1.76.0
	/tmp/ovms-protogen/bin/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
		ovms_wire/protos/tfs/*.proto
	cd ovms_wire/protos/tfs && rm -f types_pb2_grpc.py error_codes_pb2_grpc.py meta_graph_pb2_grpc.py \
		tensor_pb2_grpc.py tensor_shape_pb2_grpc.py

clean:
	rm -rf $(VENV) .venv-mlserver .venv-kserve .venv-mongo .pytest_cache .ruff_cache *.egg-info
