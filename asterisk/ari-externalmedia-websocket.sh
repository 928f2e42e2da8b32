#!/bin/sh
# voicebridge from an ARI application: an externalMedia channel with
# transport=websocket makes Asterisk dial voicebridge exactly like
# Dial(WebSocket/voicebridge/...) does (websocket_client.conf section "voicebridge").
# Bridge the returned channel with the caller's channel in your ARI app.
#
#   ARI_USER=app ARI_PASSWORD=secret ./ari-externalmedia-websocket.sh <caller-channel-uniqueid>
#
# transport_data (Asterisk 20.18+, 22.8+, 23.2+) carries the dial options: f(json)
# and v() with the call data (URL-encoded here, since it is itself a query value).
set -eu
ARI_URL="${ARI_URL:-http://127.0.0.1:8088}"
APP="${ARI_APP:-voicebridge-app}"
CALL_ID="${1:?caller channel uniqueid}"
# f(json)v(call=<id>) URL-encoded: ( ) = , become %28 %29 %3D %2C
TRANSPORT_DATA="f%28json%29v%28call%3D${CALL_ID}%29"
curl -sS -u "${ARI_USER:?}:${ARI_PASSWORD:?}" -X POST \
  "${ARI_URL}/ari/channels/externalMedia?app=${APP}&transport=websocket&encapsulation=none&external_host=voicebridge&format=slin16&transport_data=${TRANSPORT_DATA}"
echo
