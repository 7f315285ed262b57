# The two commands a new user runs: `make demo` and `make test`. Each creates .venv when missing and
# installs the package with the extras it needs (MPICH from PyPI gives a working mpiexec).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
MPIOPT := $(VENV)/bin/mpiopt
STAMP := $(VENV)/.installed
DEMO := demo-out
DEMO_ITERS ?= 2000

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[mpich,test,torch,numba]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mpiopt.demo data $(DEMO)/breast_cancer.svm
	$(MPIOPT) preprocess --file $(DEMO)/breast_cancer.svm --workers 4 --l2 1e-3 --out $(DEMO)/shards --force
	$(MPIEXEC) -n 4 $(MPIOPT) run --data $(DEMO)/shards --method gd --iters $(DEMO_ITERS) --tol 1e-10 --no-progress --out $(DEMO)/gd.json
	$(MPIEXEC) -n 4 $(MPIOPT) run --data $(DEMO)/shards --method l-svrg --iters $(DEMO_ITERS) --batch 8 --no-progress --out $(DEMO)/l-svrg.json
	$(MPIEXEC) -n 4 $(MPIOPT) run --data $(DEMO)/shards --method vr-intdiana --iters $(DEMO_ITERS) --batch 8 --no-progress --out $(DEMO)/vr-intdiana.json
	$(MPIOPT) plot $(DEMO)/gd.json $(DEMO)/l-svrg.json $(DEMO)/vr-intdiana.json --out $(DEMO)/demo.png
	$(PY) -m mpiopt.demo compare $(DEMO)/gd.json $(DEMO)/l-svrg.json $(DEMO)/vr-intdiana.json
	@echo "demo done: traces and figure in $(DEMO)/"

test: $(STAMP)
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(DEMO) .pytest_cache
