"""Weight modes (float32, bfloat16, float16, int8) and the CPU kernels they run on: fbgemm and
oneDNN picked per CPU, and our own native decode kernels (``kernels/decoder.c``)."""
