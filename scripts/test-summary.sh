#!/usr/bin/env bash
# Passes `cargo test` output through and ends it with one line that adds up every
# test binary's "test result" line: `summary: N passed, N failed, N skipped`.
set -uo pipefail
awk '
  { print; fflush() }
  /^test result: / {
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed/)  passed  += $i
      if ($(i+1) ~ /^failed/)  failed  += $i
      if ($(i+1) ~ /^ignored/) ignored += $i
    }
  }
  # Build errors (with their context) and failed tests, repeated at the end: a CI log
  # is often read from its tail.
  /^error(\[E[0-9]+\])?: / && !/^error: test failed/ { grab = 12 }
  grab > 0 { errors = errors $0 "\n"; grab-- }
  /^test .* FAILED$/ { failures = failures $0 "\n" }
  END {
    if (errors != "")   printf "\n--- errors ---\n%s", errors
    if (failures != "") printf "\n--- failed tests ---\n%s", failures
    printf "summary: %d passed, %d failed, %d skipped\n", passed, failed, ignored
  }
'
