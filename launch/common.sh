# shellcheck shell=bash
# What the launch scripts share; sourced by them, not run.

# shellcheck disable=SC2034  # dry_run and args are read by the sourcing script
split_dry_run() {  # split_dry_run "$@": dry_run=1 if --dry-run is among the arguments; the others in args
  dry_run=0
  args=()
  local arg
  for arg in "$@"; do
    if [[ $arg == --dry-run ]]; then dry_run=1; else args+=("$arg"); fi
  done
}

show() {  # prints a command as one shell line, quoting only the words that need it
  local word line=""
  for word in "$@"; do
    [[ $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]] || word=${word@Q}
    line+="${line:+ }$word"
  done
  echo "$line"
}
