#!/usr/bin/env bash
# mpirun for the ctest entries: mpirun.sh MPIEXEC NP PROGRAM ARGS...
# --oversubscribe: CI machines have fewer cores than the 4 ranks. --allow-run-as-root only when running as root
# (containers), since Open MPI refuses root otherwise. Shared memory and loopback only (btl self,vader), so a
# container without a network works; OMPI_MCA_* are set here for the test launch only.
set -euo pipefail
MPIEXEC=$1 NP=$2
shift 2
ROOT=()
if [ "$(id -u)" = 0 ]; then ROOT=(--allow-run-as-root); fi
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_plm_rsh_agent=false OMPI_MCA_hwloc_base_binding_policy=none
exec "$MPIEXEC" -np "$NP" --oversubscribe "${ROOT[@]}" "$@"
