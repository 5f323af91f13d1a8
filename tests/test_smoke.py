import aiohttp

from components.mesatee.kms import KmsComponent
from tests.conftest import internal_token


async def test_kms_create_over_http(start_node, data_dir):
    node = await start_node(["mesatee.kms", "http.mesatee"])
    url = node.http.bound["mesatee-kms"]
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/", json={"type": "Create"},
                             headers={"Authorization": f"Bearer {internal_token(data_dir)}"}) as resp:
            body = await resp.json()
    assert resp.status == 200, body
    assert body["type"] == "Create"
