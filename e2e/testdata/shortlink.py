import requests

API_KEY = "YOUR_API_KEY"
headers = {
    "Content-Type": "application/json",
    "X-API-Key": API_KEY
}
data = {
    "url": "https://example.com",
    "slug": "myslug"
}

response = requests.post(
    "https://yourdomain.com/api/shortlinks",
    headers=headers,
    json=data
)

if response.status_code == 200:
    print(f"Short link created: /{response.json()['link']['slug']}")
else:
    print(f"Error: {response.json()['error']}")
