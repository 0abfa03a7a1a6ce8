#!/bin/sh
# Create sopflow's namespace and register the search attributes its workflows upsert (SopStage, ...). Without
# them every lifecycle's workflow task fails. Idempotent: an existing namespace or attribute is left as it is.
set -eu

: "${TEMPORAL_ADDRESS:?}" "${TEMPORAL_NAMESPACE:?}"
RETENTION="${TEMPORAL_NAMESPACE_RETENTION:-720h}"

deadline=$(( $(date +%s) + 180 ))
until temporal operator cluster health --address "$TEMPORAL_ADDRESS" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "Temporal at $TEMPORAL_ADDRESS never became healthy" >&2; exit 1; }
    sleep 2
done

if ! temporal operator namespace describe --address "$TEMPORAL_ADDRESS" --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
    temporal operator namespace create --address "$TEMPORAL_ADDRESS" --namespace "$TEMPORAL_NAMESPACE" \
        --retention "$RETENTION"
fi

# Keep in step with sopflow/constants.py SEARCH_ATTRIBUTES (tests/test_compose.py checks it).
for attribute in SopStage=Keyword SopPlaybook=Keyword SopOwner=Keyword SopNextDue=Datetime; do
    name="${attribute%%=*}"
    kind="${attribute#*=}"
    output=$(temporal operator search-attribute create --address "$TEMPORAL_ADDRESS" \
        --namespace "$TEMPORAL_NAMESPACE" --name "$name" --type "$kind" 2>&1) \
        || case "$output" in
            *"already exists"*) ;;
            *) echo "$output" >&2; exit 1 ;;
        esac
done
echo "namespace $TEMPORAL_NAMESPACE ready"
