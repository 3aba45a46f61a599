#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the test suite. Extra arguments go to pytest.
# M2M_REQUIRE_BACKENDS=cpu,vulkan makes a missing backend fail instead of skip (CI sets it).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/setup.sh"
cd "$root"
exec "${M2M_VENV:-$root/.venv}/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
