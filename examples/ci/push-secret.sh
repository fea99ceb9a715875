#!/bin/sh
# An example hand-off for `keyroll rotate --due --exec ./scripts/push-secret.sh`: stores each
# new key in HashiCorp Vault, where its consumer (or its deployment) reads it. Replace the
# `vault` line with your secret store's CLI.
#
# Contract: the key arrives on stdin (one line), never in the arguments or the environment.
# The environment has KEYROLL_CONSUMER (ENV/NAME), KEYROLL_ENVIRONMENT, KEYROLL_NAME,
# KEYROLL_VERSION and KEYROLL_KID; the admin token is not passed on. Exit non-zero if the key
# was not stored: keyroll then fails the run and says how to recover (the old key keeps
# working for its grace window). Anything printed here goes to keyroll's stderr.
set -eu

# `key=-` makes vault read the value from stdin, so the key never appears in a process list.
vault kv put "secret/keyroll/${KEYROLL_ENVIRONMENT}/${KEYROLL_NAME}" key=- >/dev/null
echo "stored ${KEYROLL_CONSUMER} v${KEYROLL_VERSION} (kid ${KEYROLL_KID})"
