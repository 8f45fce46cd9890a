"""tritonclient's HTTP and gRPC clients pointed at a served model, as any Open Inference Protocol client uses them."""

import numpy as np
import tritonclient.grpc
import tritonclient.http

NUMPY_TYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BYTES": object}


def triton_http(server):
    """tritonclient's HTTP client on the inference address, with the token in a header as any client sends it."""
    client = tritonclient.http.InferenceServerClient(server.inference_url.removeprefix("http://"))
    return client, {"Authorization": f"Bearer {server.token()}"}


def triton_input(name, datatype, array, binary):
    tensor = tritonclient.http.InferInput(name, list(array.shape), datatype)
    return tensor.set_data_from_numpy(array, binary_data=binary)


def triton_outputs(names, binary):
    return [tritonclient.http.InferRequestedOutput(name, binary_data=binary) for name in names]


def triton_grpc(server):
    """tritonclient's gRPC client on the server's gRPC address (the protocol's own service), the token in metadata."""
    return tritonclient.grpc.InferenceServerClient(server.grpc_address), {"authorization": f"Bearer {server.token()}"}


def as_triton_inputs(body, client_module=tritonclient.http, binary=True):
    """An OIP JSON body's input tensors as tritonclient's (`client_module`: tritonclient.http or .grpc; gRPC always
    sends raw bytes)."""
    tensors = []
    for t in body["inputs"]:
        array = np.array(t["data"], dtype=NUMPY_TYPES[t["datatype"]]).reshape(t["shape"])
        tensor = client_module.InferInput(t["name"], list(array.shape), t["datatype"])
        tensors.append(tensor.set_data_from_numpy(array) if client_module is tritonclient.grpc else
                       tensor.set_data_from_numpy(array, binary_data=binary))  # fmt: skip
    return tensors
