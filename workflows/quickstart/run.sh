#!/usr/bin/env bash
# Set up ubmd and run the quickstart campaign on the local site (about 6 minutes on 2 cores).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bash "$here/workflows/install.sh"
cd "$here"
exec ubmd run workflows/quickstart/campaign.yaml --site local "$@"
