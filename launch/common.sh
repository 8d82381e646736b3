# shellcheck shell=bash disable=SC2034  # (the globals set here are read by the scripts that source it)
# Shared by the launch scripts (sourced, not run): argument parsing, the main.py command line, quoting, and the
# one place that runs or (with --dry-run) only prints a command.
#
# Every script takes the same arguments:
#   SCRIPT [--dry-run] [script options] CONFIG WORKDIR [main.py flags...]
# CONFIG and WORKDIR become main.py's --config and --workdir; MODE (environment, default train) its --mode; the
# flags after WORKDIR reach main.py verbatim (--config.training.n_iters=..., --eval_folder=...).
#
# Each command is printed as `+ word word ...`, quoted so that the line pastes back into a shell as the same
# words: to stdout with --dry-run (and not run), to stderr as it runs otherwise (like `set -x`).

shopt -s inherit_errexit  # a failure inside $(...) fails the script too, not just the subshell
LAUNCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAUNCH_MODES="train eval sample stats train_classifier edit"  # main.py's --mode enum
DRY_RUN=0
CONFIG=
WORKDIR=
EXTRA_FLAGS=()
MAIN_ARGS=()

# Words that need no quoting in a POSIX shell (no glob, no expansion, no separator).
LAUNCH_PLAIN_WORD='^[A-Za-z0-9_@%+=:,./-]+$'

# Each word as is when it needs no quoting, else in single quotes (' becomes '\'' : close, escaped ', reopen).
quote_words() {
  local out='' word
  for word in "$@"; do
    if [[ $word =~ $LAUNCH_PLAIN_WORD ]]; then
      out+="${out:+ }$word"
    else
      out+="${out:+ }'${word//\'/\'\\\'\'}'"
    fi
  done
  printf '%s' "$out"
}

quote_word() {
  quote_words "$1"
}

# Splits a variable holding extra flags (e.g. CREATE_FLAGS="--spot --network=n") into the array named $1, on
# spaces; no globbing, no quotes.
split_words() {
  local -n out=$1
  out=()
  if [ -n "$2" ]; then
    read -r -a out <<<"$2"
  fi
}

# Runs a command, or only prints it under --dry-run. Either way the printed line is exactly what runs.
run_cmd() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ $(quote_words "$@")"
    return 0
  fi
  echo "+ $(quote_words "$@")" >&2
  "$@"
}

# A line about what the next commands do: printed with --dry-run, so the plan reads as a script.
note() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "# $*"
  fi
}

usage_error() {
  echo "error: $1" >&2
  echo "usage: $LAUNCH_USAGE" >&2
  exit 2
}

# The comment block at the top of the calling script (its variables and defaults).
print_help() {
  echo "usage: $LAUNCH_USAGE"
  sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p;};}' "$1"
}

# Parses [--dry-run] [options] CONFIG WORKDIR [main.py flags...] into DRY_RUN, CONFIG, WORKDIR, EXTRA_FLAGS.
# A script with options of its own defines script_option OPTION, returning 0 when it took the option.
parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      -h | --help) print_help "$0"; exit 0 ;;
      --) shift; break ;;
      -*)
        if declare -F script_option >/dev/null && script_option "$1"; then
          :
        else
          usage_error "unknown option $1 (options come before CONFIG; main.py flags after WORKDIR)"
        fi ;;
      *) break ;;
    esac
    shift
  done
  if [ $# -lt 2 ]; then
    usage_error "CONFIG and WORKDIR are required"
  fi
  CONFIG=$1 WORKDIR=$2
  shift 2
  EXTRA_FLAGS=("$@")
  check_main_args
}

check_main_args() {
  local flag
  if [ -z "$CONFIG" ] || [ -z "$WORKDIR" ]; then
    usage_error "CONFIG and WORKDIR must not be empty"
  fi
  if [[ " $LAUNCH_MODES " != *" ${MODE:-} "* ]]; then
    usage_error "MODE=${MODE:-} is not a main.py mode; use one of: $LAUNCH_MODES"
  fi
  for flag in "${EXTRA_FLAGS[@]}"; do
    case $flag in
      --config | --config=* | --workdir | --workdir=* | --mode | --mode=*)
        usage_error "$flag: give the config and workdir as CONFIG WORKDIR and the mode as MODE=..., not as flags" ;;
      --dry-run)
        usage_error "--dry-run goes before CONFIG (after WORKDIR it would reach main.py)" ;;
    esac
  done
}

# Refuses a CONFIG that is not a file under `root` (a config override suffix `path:arg` is allowed).
require_config_file() {
  local root=$1 path=${CONFIG%%:*}
  case $path in
    /*) ;;
    *) path="$root/$path" ;;
  esac
  if [ ! -f "$path" ]; then
    usage_error "config file $path not found"
  fi
}

# main.py's arguments; `--distributed` is given as $1 where the script starts one process per host.
build_main_args() {
  MAIN_ARGS=(--config "$CONFIG" --mode "$MODE" --workdir "$WORKDIR" "$@" "${EXTRA_FLAGS[@]}")
}

# Accepts 0 or 1 for a yes/no variable, so a typo does not silently mean "no".
require_bool() {
  local name=$1 value=$2
  if [ "$value" != 0 ] && [ "$value" != 1 ]; then
    usage_error "$name=$value: use 0 or 1"
  fi
}

require_count() {
  local name=$1 value=$2
  if ! [[ $value =~ ^[0-9]+$ ]]; then
    usage_error "$name=$value: use a whole number"
  fi
}
