// One encoded command; mirrors CMD_DTYPE in simulator/isa/encoding.py (88 bytes, no padding).
#pragma once
#include <cstdint>

namespace ember {

struct Cmd {
    int64_t a[8];
    int32_t wait_tok, wait_cnt, sig_tok;
    int16_t peer, pe;
    uint8_t op, engine, dtype, dtype2, fn, src_space, dst_space, flags;
};
static_assert(sizeof(Cmd) == 88, "Cmd must match CMD_DTYPE");

constexpr int kNumEngines = 6;   // Engine in simulator/isa/opcodes.py: DMA .. VEC
constexpr int kNumDtypes = 8;   // DType in simulator/isa/opcodes.py: FP32 .. MXFP4
enum Opcode : uint8_t { NOP, DMA, DPE, RE_ACC, RE_SEND, S_UN, S_BIN, S_SCA, S_RED, S_BC,
                        M_T, M_CP, M_CAT, S_MXQ, VEC };
enum SpaceCode : uint8_t { DRAM, SRAM, LOCAL, HOST };

}  // namespace ember
