# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
export OMP_NUM_THREADS ?= 1

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of PyTorch; a plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0

$(VENV)/.installed-core: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[serve,ui,datasets,llm,pretrained,compress,privacy,security]'
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Run danlu's main job end to end on a bundled real dataset (scikit-learn's digits).
demo: $(VENV)/.installed-core
	$(BIN)/danlu datasets
	$(BIN)/danlu data inspect examples/digits_cnn.yaml
	$(BIN)/danlu run examples/digits_cnn.yaml
	$(BIN)/danlu report digits@staging
	$(BIN)/danlu models verify digits@staging
	$(BIN)/python examples/serve_demo.py
	$(BIN)/python examples/package_demo.py
	$(BIN)/danlu runs ls --limit 5
	$(BIN)/danlu tune examples/digits_tune.yaml --jobs 2
	$(BIN)/danlu studies show digits-tune
	$(BIN)/danlu models show digits
	$(BIN)/danlu run examples/digits_ddp.yaml --set train.epochs=5
	$(BIN)/danlu submit examples/wine_mlp.yaml --set train.epochs=5 --priority 1
	$(BIN)/danlu agent --exit-when-idle
	$(BIN)/danlu jobs ls --limit 5
	$(BIN)/danlu run examples/titanic_auto.yaml
	$(BIN)/danlu predict titanic@staging examples/passengers.csv --proba --keep passenger
	$(BIN)/danlu run examples/breast_cancer_dp.yaml
	$(BIN)/danlu run examples/airline_forecast.yaml
	$(BIN)/python -c "import danlu; from danlu.data import load_source; \
	  history = load_source('builtin:airline').frame['passengers'].to_numpy(); \
	  f = danlu.load_model('airline@production').forecast(history); \
	  print('1961, months 1-12:', f['prediction'].round(), '80% interval of month 12:', f['lower'][-1].round(), '-', f['upper'][-1].round())"
	$(BIN)/danlu run examples/digits_anomaly.yaml
	$(BIN)/danlu run examples/bbc_news_lora.yaml --set data.text.max_length=32 --set train.epochs=1 \
	  --set evaluate.robustness.samples=100
	$(BIN)/python -c "import danlu; m = danlu.load_model('bbc-news@staging'); \
	  print(m.predict(['Shares rose after the bank raised its profit forecast for the year.', \
	  'The striker scored twice as the home side won the cup final.'])['prediction'])"
	$(BIN)/python -c "import danlu; from sklearn.datasets import load_digits; \
	  m = danlu.load_model('digits@staging'); print(m, '->', m.predict(load_digits().data[:10])['prediction'])"
	$(BIN)/danlu run examples/bbc_news_lm.yaml --set train.epochs=1 \
	  --set "language_model.where={category: [business, tech]}" \
	  --set model.width=128 --set model.dropout=0.0
	$(BIN)/danlu run examples/bbc_news_lm_lora.yaml --set train.epochs=1 --set model.width=128
	$(BIN)/danlu generate bbc-lm-sport@production --prompt "The match" --max-tokens 40 --seed 0
	$(BIN)/danlu run examples/digits_vae.yaml --set train.epochs=40
	$(BIN)/danlu generate digits-vae@staging --n 16 --out .danlu/vae-samples
	$(BIN)/python examples/make_movielens.py
	$(BIN)/danlu run examples/movielens_bpr.yaml --set train.epochs=3
	$(BIN)/python -c "import danlu; m = danlu.load_model('movielens'); \
	  print('user 42:', m.recommend(42, k=5)['items'], '| a new user:', m.recommend('new-user', k=3))"

## Install the test extras and run the whole test suite.
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

## ruff (with a complexity limit: lint.mccabe in pyproject.toml), the formatter's check, mypy.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check danlu tests bench
	$(BIN)/ruff format --check danlu tests bench
	$(BIN)/mypy danlu

bench: $(VENV)/.installed-test
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/example_accuracy.py
	$(BIN)/python bench/store_bench.py
	$(BIN)/python bench/augmentation.py
	$(BIN)/python bench/imbalance.py
	$(BIN)/python bench/column_kinds.py
	$(BIN)/python bench/streaming.py   # writes a 20-million-row Parquet set under bench/data/ once
	$(BIN)/python bench/tune_efficiency.py
	$(BIN)/python bench/tune_efficiency.py --jobs-timing
	$(BIN)/python bench/report_timing.py
	$(BIN)/python bench/bootstrap_coverage.py
	$(BIN)/python bench/explain_sanity.py
	$(BIN)/python bench/serve_load.py        # needs wrk (apt-get install wrk) or falls back to aiohttp

clean:
	rm -rf $(VENV) .danlu .pytest_cache
