curl -X POST https://yourdomain.com/api/shortlinks \
  -H "Content-Type: application/json" \
  -H "X-API-Key: YOUR_API_KEY_HERE" \
  -d '{"url":"https://example.com","slug":"myslug"}'
