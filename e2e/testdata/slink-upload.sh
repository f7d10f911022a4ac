curl -X POST \
-H "Authorization: Bearer sk_your_api_key_here" \
-F "image=@/path/to/your/image.jpg" \
https://your-slink-instance.com/api/external/upload
