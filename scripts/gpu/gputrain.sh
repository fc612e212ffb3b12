#!/usr/bin/env bash
# The GPU trainer's slot script is scripts/gpu/gtrain.sh (the device-resident step, issue 11); this name runs it.
exec "$(dirname "$0")/gtrain.sh" "$@"
