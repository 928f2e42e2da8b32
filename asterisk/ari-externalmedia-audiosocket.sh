#!/bin/sh
# Bridges a caller's channel to voicebridge with ARI externalMedia over AudioSocket.
# Run it from your ARI application once it has the caller's channel (in a Stasis app):
#
#   ./ari-externalmedia-audiosocket.sh <caller-channel-id>
#
# It creates an AudioSocket channel towards voicebridge (16 kHz slin), a mixing bridge,
# and puts both channels in it. Needs curl and jq. The UUID in `data` becomes the
# voicebridge call id. Settings come from the environment:
set -eu

ARI_URL=${ARI_URL:-http://127.0.0.1:8088/ari}
ARI_USER=${ARI_USER:-voicebridge}
ARI_PASSWORD=${ARI_PASSWORD:?set ARI_PASSWORD (ari.conf)}
ARI_APP=${ARI_APP:-voicebridge}
# The [[audiosocket]] listener of voicebridge-audiosocket.toml.
VOICEBRIDGE=${VOICEBRIDGE:-10.0.0.5:9092}

caller=${1:?usage: $0 <caller-channel-id>}
id=$(cat /proc/sys/kernel/random/uuid)

ari() {
    curl -fsS -u "$ARI_USER:$ARI_PASSWORD" -X POST "$ARI_URL/$1"
}

media=$(ari "channels/externalMedia?app=$ARI_APP&external_host=$VOICEBRIDGE&encapsulation=audiosocket&transport=tcp&format=slin16&data=$id" | jq -r .id)
bridge=$(ari "bridges?type=mixing" | jq -r .id)
ari "bridges/$bridge/addChannel?channel=$caller,$media" >/dev/null
echo "voicebridge call $id: caller $caller, AudioSocket channel $media, bridge $bridge"
