#!/usr/bin/env bash
# Run a command against a fresh local ECR endpoint (tests/emulator), then stop the endpoint.
# The command sees the endpoint in its environment (AWS_ENDPOINT_URL_ECR, AWS_ACCESS_KEY_ID, ...)
# and, for ansible-test, in tests/integration/integration_config.yml (ecr_endpoint_url, ecr_access_key, ...).
# A private containerd (tests/containerd/private_containerd.py: own root, state and socket under the same
# temp dir, CRI disabled) runs beside it when containerd is installed and we are root; its socket is
# ecr_containerd_address in integration_config.yml ("" when none runs: the containerd target then fails).
# Usage: scripts/with-emulator.sh COMMAND [ARG...]   (run from the collection root)
set -euo pipefail

# The documented test key pair of the emulator (tests/emulator/README.md); not a real credential.
access_key=AKIAECRKITTEST000000
secret_key=ecrkit+emulator/test/secret/key/0000000000
region=us-east-1
account_id=123456789012

work=$(mktemp -d "${TMPDIR:-/tmp}/ecrkit-endpoint.XXXXXX")
python3 tests/emulator/ecr_emulator.py --listen 127.0.0.1:0 --data "$work/data" --ready-file "$work/url" \
    --access-key "$access_key" --secret-key "$secret_key" --account-id "$account_id" \
    --log "$work/endpoint.log" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
      python3 tests/containerd/private_containerd.py stop "$work/containerd" >/dev/null 2>&1; rm -rf "$work"' EXIT

containerd_address=""
if command -v containerd >/dev/null && [ "$(id -u)" = 0 ]; then
    containerd_address=$(python3 tests/containerd/private_containerd.py start "$work/containerd")
fi

waited=0
while [ ! -s "$work/url" ] && [ "$waited" -lt 300 ]; do
    kill -0 "$pid" 2>/dev/null || { echo "the local ECR endpoint failed to start" >&2; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
done
[ -s "$work/url" ] || { echo "the local ECR endpoint did not become ready within 30 s" >&2; exit 1; }
url=$(cat "$work/url")

export AWS_ENDPOINT_URL_ECR=$url AWS_ACCESS_KEY_ID=$access_key AWS_SECRET_ACCESS_KEY=$secret_key
export AWS_DEFAULT_REGION=$region AWS_REGION=$region ECRKIT_ACCOUNT_ID=$account_id
unset AWS_SESSION_TOKEN AWS_PROFILE
cat > tests/integration/integration_config.yml <<EOT
---
ecr_endpoint_url: "$url"
ecr_access_key: "$access_key"
ecr_secret_key: "$secret_key"
ecr_region: "$region"
ecr_account_id: "$account_id"
ecr_sample_images: "$PWD/tests/emulator/sample_images.py"
ecr_containerd_address: "$containerd_address"
EOT

status=0
"$@" || status=$?
exit "$status"
