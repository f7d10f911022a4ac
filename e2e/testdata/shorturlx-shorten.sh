curl --request POST \
  --url https://www.shorturlx.xyz/api/shorten \
  --header "Authorization: Bearer sk_your_api_key_here" \
  --header "Content-Type: application/json" \
  --data '{"url": "https://example.com/long-url"}'
