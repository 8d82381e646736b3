#!/usr/bin/env bash
# Run main.py on a Cloud TPU obtained as a queued resource (Spot or best-effort capacity), and keep it running
# through preemptions: request the resource, wait until it is ACTIVE, copy and install this repository on every
# worker, run main.py on all of them with --distributed. When main.py exits 143 (SIGTERM: preempted, checkpoint
# saved) or the resource is preempted or deleted under it, delete a SUSPENDED or FAILED resource, request it
# again and rerun the same command, which resumes from the workdir (launch/README.md). Exit 0 ends the loop;
# 1 (bad input) or any other status while the resource is still ACTIVE stops it with that status.
#
#   launch/tpu_queued.sh [--dry-run] CONFIG WORKDIR [main.py flags...]
#   TPU_NAME=v4-spot ACCELERATOR_TYPE=v4-32 launch/tpu_queued.sh configs/vp/cifar10.py gs://BUCKET/runs/cifar10_vp
#
# --dry-run  print every command (one per line, `+ ` first, `# ` lines saying when each runs) and run none
#
# The launcher must outlive the job: start it where it can keep running for days (tmux, nohup, a small VM).
# A status other than 0 from gcloud while the resource is gone (a lost ssh connection ends gcloud with 1 or
# 255) counts as a preemption: it is the resource's state, read after every run, that decides.
#
# Variables (environment), default in brackets:
#   TPU_NAME          name of the TPU VM (the queued resource's node) [score-sde]
#   QR_NAME           name of the queued resource [$TPU_NAME]
#   ZONE              its zone [us-central2-b]
#   ACCELERATOR_TYPE  TPU type and size, e.g. v4-8, v4-32, v5litepod-16 [v4-8]
#   TPU_VERSION       TPU software version (runtime image) [tpu-ubuntu2204-base]
#   PROJECT           Google Cloud project; empty: gcloud's configured one []
#   PROVISIONING      spot (--spot), best-effort (--best-effort, gcloud alpha), guaranteed, reserved, or
#                     on-demand (no tier flag) [spot]
#   CREATE_FLAGS      extra flags for `queued-resources create`, split on spaces, e.g. "--valid-until-duration=6h" []
#   MAX_RETRIES       how many times to rerun (and to request the resource again) before giving up [10]
#   POLL_SECONDS      seconds between looks at the resource's state, and before a rerun [60]
#   MODE              main.py --mode: train, eval, sample, stats, train_classifier, edit [train]
#   PIP_INSTALL       1: pip install the repository and JAX_PIP on every worker; 0: it is installed [1]
#   JAX_PIP           the JAX package to install with it [jax[tpu]]
#   REMOTE_DIR        where the repository goes on each worker, relative to the home directory [score_sde]
#   REMOTE_PYTHON     the workers' Python [python3]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=launch/tpu_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/tpu_common.sh"

TPU_NAME=${TPU_NAME:-score-sde}
QR_NAME=${QR_NAME:-$TPU_NAME}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
PROJECT=${PROJECT:-}
PROVISIONING=${PROVISIONING:-spot}
CREATE_FLAGS=${CREATE_FLAGS:-}
MAX_RETRIES=${MAX_RETRIES:-10}
POLL_SECONDS=${POLL_SECONDS:-60}
MODE=${MODE:-train}
PIP_INSTALL=${PIP_INSTALL:-1}
JAX_PIP=${JAX_PIP:-jax[tpu]}
REMOTE_DIR=${REMOTE_DIR:-score_sde}
REMOTE_PYTHON=${REMOTE_PYTHON:-python3}
LAUNCH_USAGE="$0 [--dry-run] CONFIG WORKDIR [main.py flags...]"

# What to do after a run: finish (exit 0), stop (with the status), or retry (request the resource if needed, rerun).
# $1: the run's exit status; $2: the resource's state read after it ("" when the resource no longer exists).
retry_decision() {
  local status=$1 state=$2
  if [ "$status" = 0 ]; then
    echo finish
  elif [ "$state" != ACTIVE ]; then
    echo retry  # preempted or deleted under the job: whatever gcloud reported, the job did not finish
  elif [ "$status" = 143 ]; then
    echo retry  # main.py was SIGTERMed and saved a checkpoint: rerunning resumes from it
  else
    echo stop   # 1: bad input ("error: ..." says what to fix); anything else: a bug to report
  fi
}

# The queued-resources command group and the tier flag PROVISIONING asks for.
queued_commands() {
  QR_CMD=(gcloud compute tpus queued-resources)
  case $PROVISIONING in
    spot) TIER_FLAGS=(--spot) ;;
    best-effort) TIER_FLAGS=(--best-effort) QR_CMD=(gcloud alpha compute tpus queued-resources) ;;
    guaranteed) TIER_FLAGS=(--guaranteed) ;;
    reserved) TIER_FLAGS=(--reserved) ;;
    on-demand) TIER_FLAGS=() ;;
    *) usage_error "PROVISIONING=$PROVISIONING: use spot, best-effort, guaranteed, reserved or on-demand" ;;
  esac
}

# The resource's state (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ...), "" if there is none.
qr_state() {
  "${QR_CMD[@]}" describe "$QR_NAME" "${LOCATION_FLAGS[@]}" --format='value(state.state)' 2>/dev/null || true
}

create_qr() {
  local extra
  split_words extra "$CREATE_FLAGS"
  run_cmd "${QR_CMD[@]}" create "$QR_NAME" --node-id="$TPU_NAME" "${LOCATION_FLAGS[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$TPU_VERSION" "${TIER_FLAGS[@]}" "${extra[@]}"
}

# --force deletes the TPU VM with the request, so the next create starts from nothing.
delete_qr() {
  run_cmd "${QR_CMD[@]}" delete "$QR_NAME" "${LOCATION_FLAGS[@]}" --force --quiet
}

# Requests the resource when there is none (or it was SUSPENDED / FAILED) and waits until it is ACTIVE. Sets
# NEED_SETUP=1 when it made a new one. Each request after the first uses up one of MAX_RETRIES.
ensure_active() {
  local state last=none
  while true; do
    state=$(qr_state)
    if [ "$state" != "$last" ]; then
      echo "queued resource $QR_NAME: ${state:-absent}" >&2
      last=$state
    fi
    case $state in
      ACTIVE) return 0 ;;
      "" | SUSPENDED | FAILED)
        if [ "$REQUESTS" -gt "$MAX_RETRIES" ]; then
          echo "error: requested $QR_NAME $REQUESTS times; giving up (MAX_RETRIES=$MAX_RETRIES)" >&2
          exit 1
        fi
        if [ -n "$state" ]; then
          delete_qr
        fi
        create_qr
        REQUESTS=$((REQUESTS + 1))
        NEED_SETUP=1 ;;
      *) sleep "$POLL_SECONDS" ;;  # waiting in the queue, provisioning, suspending or deleting
    esac
  done
}

run_loop() {
  local reruns=0 status state decision
  REQUESTS=0
  NEED_SETUP=1
  while true; do
    ensure_active
    status=0
    if [ "$NEED_SETUP" = 1 ]; then
      tpu_setup_workers || status=$?
    fi
    if [ "$status" = 0 ]; then
      NEED_SETUP=0
      tpu_run_main || status=$?
    fi
    state=$(qr_state)
    decision=$(retry_decision "$status" "$state")
    if [ "$decision" = finish ]; then
      echo "main.py finished" >&2
      return 0
    fi
    if [ "$decision" = stop ]; then
      echo "exit status $status with $QR_NAME ACTIVE: not rerunning (launch/README.md, Exit status)" >&2
      return "$status"
    fi
    if [ "$reruns" -ge "$MAX_RETRIES" ]; then
      echo "error: exit status $status after $reruns reruns; giving up (MAX_RETRIES=$MAX_RETRIES)" >&2
      return "$status"
    fi
    reruns=$((reruns + 1))
    echo "exit status $status, $QR_NAME ${state:-absent}: rerun $reruns of at most $MAX_RETRIES" >&2
    sleep "$POLL_SECONDS"
  done
}

# --dry-run: the commands of a first run, then those of a rerun after a preemption.
dry_plan() {
  note "queued resource $QR_NAME: read its state; request it when there is none, then poll until it is ACTIVE"
  run_cmd "${QR_CMD[@]}" describe "$QR_NAME" "${LOCATION_FLAGS[@]}" --format='value(state.state)'
  create_qr
  tpu_setup_workers
  tpu_run_main
  note "exit 0: done. Another status while $QR_NAME is ACTIVE: stop with it, except 143 (preempted): rerun."
  note "$QR_NAME preempted or gone: delete it if SUSPENDED or FAILED, request it again, copy, rerun the same"
  note "main.py command (it resumes from the workdir); at most MAX_RETRIES=$MAX_RETRIES reruns."
  delete_qr
  create_qr
}

main() {
  parse_args "$@"
  require_count MAX_RETRIES "$MAX_RETRIES"
  require_count POLL_SECONDS "$POLL_SECONDS"
  if [ -z "$QR_NAME" ]; then
    usage_error "QR_NAME must not be empty"
  fi
  tpu_check_variables
  tpu_location_flags
  queued_commands
  if [ "$DRY_RUN" = 1 ]; then
    dry_plan
  else
    run_loop
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
