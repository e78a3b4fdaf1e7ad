#!/usr/bin/env bash
# Mutation check: do the tests see the bugs they are named for?
#
# Each mutation below re-introduces one such bug with sed. In a scratch copy of the tree (never this
# tree: a copy of the working tree's tracked and untracked files, or of a commit with --rev), the
# script first runs every mutation's tests unmutated (they must pass), then per mutation restores the
# pristine file, applies the mutation, builds, and runs that mutation's test filter:
#   PASS  the tests fail: the mutation is caught;
#   FAIL  the tests pass: they are blind to the bug (or the sed no longer applies, or it does not build).
#
#   scripts/mutation-check.sh [--rev REV] [--keep] [NAME ...]     (default: every mutation)
#
# --rev REV checks a commit instead of the working tree (e.g. one from before a test was added, to see
# the mutation survive there); --keep leaves the scratch copy (its path is printed). Exit 0 when every
# mutation is caught. Needs what the build needs; one release build of the copy, then incremental ones.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

names=() files=() filters=() edits=()
# Registers a mutation: NAME, FILE (relative to the package root), the XCTest FILTER that must fail,
# and the sed EXPRESSION applied to FILE.
mutation() { names+=("$1"); files+=("$2"); filters+=("$3"); edits+=("$4"); }

# A one-byte overlap between two tensors' data_offsets passes the overlap check.
mutation overlap-off-by-one Sources/SafeTensors/SafeTensorsHeader.swift SafeTensorsFormatTests \
  's/if info\.dataOffsets\.lowerBound < cursor, let previous {/if info.dataOffsets.lowerBound < cursor - 1, let previous {/'
# Group-limited routing scores a group by the sum of its experts instead of its best one (V2's rule)...
mutation group-score-sum Sources/ReferenceModel/MoERouter.swift RouterTests \
  's/return members\.max()!/return members.reduce(0, +)/'
# ...or by V3's rule, the sum of its top two.
mutation group-score-top2-sum Sources/ReferenceModel/MoERouter.swift RouterTests \
  's/return members\.max()!/return members.sorted(by: >).prefix(2).reduce(0, +)/'
# noaux_tc weighs the chosen experts by their biased scores (the bias must only choose).
mutation noaux-biased-weights Sources/ReferenceModel/MoERouter.swift V3FamilyTests \
  's/method == \.noauxTC ? scores\[\$0\] : choice\[\$0\]/choice[$0]/'
# noaux_tc masks dropped groups with 0 (the hub's old remote code) instead of -inf (transformers 5).
mutation noaux-zero-mask Sources/ReferenceModel/MoERouter.swift V3FamilyTests \
  's/case \.noauxTC: masked = -\.infinity/case .noauxTC: masked = 0/'
# absorb --mode split scales the query's nope rows by the softmax scale but leaves the rope rows unscaled.
mutation unscaled-split-rope-rows Sources/Conversion/MLAAbsorber.swift AbsorbAlgebraTests \
  's/query\[r \* inQ + j\] = wq\[r \* inQ + j\] \* gammaQ\[j\] \* scale }/query[r * inQ + j] = wq[r * inQ + j] * gammaQ[j] * (r % dq < nope ? scale : 1) }/'
# The SIGKILL harness waits for the job to end instead of for its shards: every kill lands after the
# run finished, so it would test nothing.
mutation kill-never-lands Tests/EndToEndTests/ReliabilityTests.swift InterruptionTests \
  's/while process.isRunning, Date() < deadline, shardCount(work) < shards {/while process.isRunning, Date() < deadline {/'
# Work directories are not vetted: a link planted under a work directory's name is taken as ours.
mutation work-directory-unvetted Sources/SafeTensors/FileSystem.swift 'OutputSafetyTests|DataSafetyTests' \
  's/public var isOwnDirectory: Bool { kind == .directory \&\& owner == geteuid() }/public var isOwnDirectory: Bool { true }/'
# --resume keeps shards whatever the input became (the old names-and-sizes fingerprint, at its weakest).
mutation resume-ignores-input Sources/SafeTensors/ResumeKey.swift 'OutputSafetyTests|DataSafetyTests' \
  's/        if previous\["."\] != input\["."\] {/        if false, previous["."] != input["."] {/; s/for name in Set(previous.keys).union(input.keys).sorted() where previous\[name\] != input\[name\] {/for name in [String]() where previous[name] != input[name] {/'

rev="" keep=0 selected=()
while (($#)); do
  case "$1" in
    --rev) rev="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) selected+=("$1"); shift ;;
  esac
done
if ((${#selected[@]} == 0)); then selected=("${names[@]}"); fi
index_of() { local i; for i in "${!names[@]}"; do [[ "${names[$i]}" == "$1" ]] && { echo "$i"; return; }; done; echo "unknown mutation '$1' (known: ${names[*]})" >&2; exit 64; }
picked=(); for name in "${selected[@]}"; do picked+=("$(index_of "$name")"); done

scratch=$(mktemp -d "${TMPDIR:-/tmp}/dsconvert-mutation-XXXXXX")
cleanup() { if ((keep)); then echo "scratch copy kept: $scratch"; else rm -rf "$scratch"; fi; }
trap cleanup EXIT
if [[ -n "$rev" ]]; then
  git archive "$rev" | tar -x -C "$scratch"
else
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -x -C "$scratch"
fi
mkdir -p "$scratch/.pristine" "$scratch/.mutation-logs"
flags=(-c release -Xswiftc -enable-testing)
build() { (cd "$scratch" && swift build "${flags[@]}" --build-tests) >"$scratch/.mutation-logs/$1.build.log" 2>&1; }
run_tests() { (cd "$scratch" && swift test "${flags[@]}" --skip-build --filter "$2") >"$scratch/.mutation-logs/$1.test.log" 2>&1; }

# The baseline: unmutated, every selected filter must pass, or a failure below would mean nothing.
baseline_filter=$(for i in "${picked[@]}"; do echo "${filters[$i]}"; done | sort -u | paste -sd'|')
echo "mutation check of ${rev:-the working tree} in $scratch"
build baseline || { echo "the unmutated copy does not build (see $scratch/.mutation-logs/baseline.build.log)"; keep=1; exit 1; }
run_tests baseline "$baseline_filter" || { echo "the unmutated tests fail (see $scratch/.mutation-logs/baseline.test.log)"; keep=1; exit 1; }
echo "baseline: $baseline_filter pass unmutated"

failed=0
for i in "${picked[@]}"; do
  name=${names[$i]} file=${files[$i]}
  mkdir -p "$scratch/.pristine/$(dirname "$file")"
  [[ -f "$scratch/.pristine/$file" ]] || cp "$scratch/$file" "$scratch/.pristine/$file"
  cp "$scratch/.pristine/$file" "$scratch/$file"
  sed -i -e "${edits[$i]}" "$scratch/$file"
  if cmp -s "$scratch/$file" "$scratch/.pristine/$file"; then
    verdict="FAIL (the sed did not apply: the source changed, update the mutation)"
  elif ! build "$name"; then
    verdict="FAIL (the mutant does not build; see .mutation-logs/$name.build.log)"
  elif run_tests "$name" "${filters[$i]}"; then
    verdict="FAIL (${filters[$i]} pass with the mutation: the tests are blind to it)"
  else
    caught=$(grep -E "^Test Case .* failed" "$scratch/.mutation-logs/$name.test.log" | sed -E "s/^Test Case '([^']*)' failed.*/\1/" | sort -u | paste -sd' ' || true)
    verdict="PASS (caught by ${caught:-${filters[$i]}})"
  fi
  cp "$scratch/.pristine/$file" "$scratch/$file"
  [[ "$verdict" == PASS* ]] || failed=1
  printf '%-26s %s\n' "$name" "$verdict"
done
exit "$failed"
