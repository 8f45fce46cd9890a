"""tritonclient's HTTP client pointed at a served model, as any Open Inference Protocol client uses it."""

import tritonclient.http


def triton_http(server):
    """tritonclient's HTTP client on the inference address, with the token in a header as any client sends it."""
    client = tritonclient.http.InferenceServerClient(server.inference_url.removeprefix("http://"))
    return client, {"Authorization": f"Bearer {server.token()}"}


def triton_input(name, datatype, array, binary):
    tensor = tritonclient.http.InferInput(name, list(array.shape), datatype)
    return tensor.set_data_from_numpy(array, binary_data=binary)


def triton_outputs(names, binary):
    return [tritonclient.http.InferRequestedOutput(name, binary_data=binary) for name in names]
