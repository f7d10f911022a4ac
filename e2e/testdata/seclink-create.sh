curl -X POST https://seclink.local/api/v1/secrets \
-H "Authorization: Bearer sk_live_xxx" \
-H "Content-Type: application/json" \
-d '{"encryptedBlob":"...","iv":"...","expiryType":"view_once"}'
