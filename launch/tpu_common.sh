# shellcheck shell=bash disable=SC2034  # (the globals set here are read by the scripts that source it)
# Shared by tpu_vm.sh and tpu_queued.sh (sourced after common.sh): copy the repository to every worker of a
# TPU VM, install it, and run main.py on every worker at once.
#
# A pod slice is several hosts ("workers"); `gcloud compute tpus tpu-vm ssh --worker=all` runs one command on
# each of them in parallel and exits with the first non-zero status of a worker, so main.py's own exit status
# (0, 1, 143: see launch/README.md) comes back to the launcher. gcloud hands the --command string to ssh, whose
# remote shell parses it: hence the words in it are quoted with quote_words.

# gcloud flags naming where the TPU is.
tpu_location_flags() {
  LOCATION_FLAGS=(--zone="$ZONE")
  if [ -n "${PROJECT:-}" ]; then
    LOCATION_FLAGS+=(--project="$PROJECT")
  fi
}

tpu_check_variables() {
  if [ -z "$TPU_NAME" ] || [ -z "$ZONE" ] || [ -z "$ACCELERATOR_TYPE" ] || [ -z "$TPU_VERSION" ]; then
    usage_error "TPU_NAME, ZONE, ACCELERATOR_TYPE and TPU_VERSION must not be empty"
  fi
  require_bool PIP_INSTALL "$PIP_INSTALL"
  require_config_file "$LAUNCH_REPO"
  case $CONFIG in
    /*) usage_error "CONFIG must be a path inside the repository (it is copied to the workers): $CONFIG" ;;
  esac
  case $WORKDIR in
    gs://*) ;;
    *) echo "warning: WORKDIR $WORKDIR is not a gs:// bucket; on a pod slice every worker needs the same workdir" >&2 ;;
  esac
}

# Packs the repository (without its history, tests and local runs) and unpacks it into REMOTE_DIR on every
# worker, then installs it there when PIP_INSTALL=1.
tpu_setup_workers() {
  local tarball="${TMPDIR:-/tmp}/score_sde-$TPU_NAME.tgz" remote_tar="$REMOTE_DIR.tgz" setup
  setup="mkdir -p $(quote_word "$REMOTE_DIR") && tar -xzf $(quote_word "$remote_tar") -C $(quote_word "$REMOTE_DIR")"
  if [ "$PIP_INSTALL" = 1 ]; then
    setup+=" && cd $(quote_word "$REMOTE_DIR") && $(quote_words "$REMOTE_PYTHON" -m pip install -q -e . "$JAX_PIP")"
  fi
  # Chained with && so that a failed step stops the rest even where the caller tests the status (no errexit).
  run_cmd tar -C "$LAUNCH_REPO" --exclude=./.git --exclude=./runs --exclude=./tests --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=.pytest_cache -czf "$tarball" . &&
    run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:$remote_tar" "${LOCATION_FLAGS[@]}" --worker=all &&
    run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" --worker=all --command "$setup"
}

# main.py on every worker, with --distributed: jax.distributed.initialize() finds the other workers itself.
tpu_run_main() {
  build_main_args --distributed
  local command
  command="cd $(quote_word "$REMOTE_DIR") && $(quote_words "$REMOTE_PYTHON" main.py "${MAIN_ARGS[@]}")"
  run_cmd gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${LOCATION_FLAGS[@]}" --worker=all --command "$command"
}
