import requests
response = requests.post(
'https://seclink.local/api/v1/secrets',
headers={
'Authorization': 'Bearer sk_live_xxx',
'Content-Type': 'application/json'
},
json={
'encryptedBlob': '...',
'iv': '...',
'expiryType': 'view_once'
}
)
print(response.json())