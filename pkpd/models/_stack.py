"""Zeroed arrays on the calling kernel's stack (numba intrinsics: float64 `stack_zeros`, int64
`stack_indices`).

The generated solver kernels run without numba's reference counting (each inlined helper
call with array arguments would otherwise cost atomic increments and decrements), so they
cannot allocate with np.zeros; arrays on the stack also tell LLVM that no two of them alias,
which heap buffers passed in as arguments do not. Call them only at the top of a
kernel, never in a loop: each call grows the stack frame until the kernel returns.
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


def _stack_array(dtype):
    """An intrinsic returning np.zeros(shape, dtype) (C order) in the calling function's stack frame."""

    def build(typingctx, shape):
        if not (isinstance(shape, types.UniTuple) and isinstance(shape.dtype, types.Integer)):
            return None
        ndim = shape.count
        array_type = types.Array(dtype, ndim, "C")

        def codegen(context, builder, signature, args):
            intp = context.get_value_type(types.intp)
            dims = [context.cast(builder, d, signature.args[0].dtype, types.intp)
                    for d in cgutils.unpack_tuple(builder, args[0], ndim)]
            size = intp(1)
            for d in dims:
                size = builder.mul(size, d)
            count = builder.select(builder.icmp_signed(">", size, intp(0)), size, intp(1))  # no empty alloca
            data = builder.alloca(context.get_value_type(dtype), size=count)
            cgutils.memset(builder, data, builder.mul(count, intp(8)), 0)
            strides, stride = [], intp(8)
            for d in reversed(dims):
                strides.insert(0, stride)
                stride = builder.mul(stride, d)
            array = make_array(array_type)(context, builder)
            populate_array(array, data=data, shape=cgutils.pack_array(builder, dims),
                           strides=cgutils.pack_array(builder, strides), itemsize=intp(8), meminfo=None)
            return array._getvalue()

        return array_type(shape), codegen

    return intrinsic(build)


#: np.zeros(shape) (float64) in the calling function's stack frame; shape: a tuple of integers
stack_zeros = _stack_array(types.float64)
#: np.zeros(shape, np.int64) in the calling function's stack frame
stack_indices = _stack_array(types.int64)
