.PHONY: build test demo crosscheck fuzz fixtures clean

build:
	scripts/setup.sh --build
	swift build -c release

# Installs what is missing, runs the Swift suite and the cross-checks (what .ci/run runs).
test:
	scripts/test.sh

# Runs the main job on the bundled trained fixture.
demo:
	scripts/demo.sh

crosscheck: build
	python3 Tests/crosscheck/crosscheck.py --bin .build/release/dsconvert --llama-cpp "$$(scripts/llama-cpp.sh)"

# Fuzzes the header, index and config parsers for FUZZ_SECONDS (default 1800) with libFuzzer.
fuzz:
	scripts/fuzz.sh $${FUZZ_SECONDS:-1800}

# Regenerates Fixtures/ (by hand only; needs the pinned packages in Fixtures/requirements.txt).
fixtures:
	python3 Fixtures/generate.py

clean:
	rm -rf .build
