"""Where answers come from: models and their registry, the hardware and its dtype, the
in-process vLLM engine and vLLM servers. Imports only `core`."""
