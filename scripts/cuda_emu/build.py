"""Build fastconv with its CUDA kernels emulated on the CPU, in a copy of the source tree (README.md here).

    python scripts/cuda_emu/build.py [TREE]      # default TREE: build/cuda_emu (under the repository)

TREE gets the repository's files and a fastconv._C made of csrc/fastconv.cpp, csrc/autograd.cpp and
csrc/cuda/*.cu rewritten as C++ and registered for the CPU: in TREE, the "cpu" backend runs the CUDA kernels'
code. Run the ops tests there with `-k cpu-cpu` (see README.md). Incremental: ninja rebuilds what changed.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import torch
from torch.utils import cpp_extension

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _balanced(text, start, open_char, close_char):
    """Index just past the bracket closing the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_char:
            depth += 1
        elif text[i] == close_char:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced {open_char}{close_char} from offset {start}")


def _kernel_start(text, end):
    """Start of the kernel expression that ends at text[end] (exclusive): name, qualified name, template args."""
    i = end
    while text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def rewrite_launches(text):
    """kernel<<<config>>>(args) -> ::fcemu::launch(LaunchConfig(config), "file:kernel", call kernel, args)"""
    out = []
    position = 0
    while True:
        open_at = text.find("<<<", position)
        if open_at < 0:
            out.append(text[position:])
            return "".join(out)
        start = _kernel_start(text, open_at)
        close_at = text.index(">>>", open_at)
        paren = close_at + 3
        while text[paren].isspace():
            paren += 1
        if text[paren] != "(":
            raise ValueError(f"no argument list after a launch at offset {open_at}")
        args_end = _balanced(text, paren, "(", ")")
        kernel = text[start:open_at].strip()
        config = text[open_at + 3 : close_at].strip()
        args = text[paren + 1 : args_end - 1].strip()
        out.append(text[position:start])
        name = f'__FILE__ ":{kernel}"'
        call = f"[&](auto... fcemu_args) {{ {kernel}(fcemu_args...); }}"
        out.append(f"::fcemu::launch(::fcemu::LaunchConfig({config}), {name}, {call}{', ' + args if args else ''})")
        position = args_end


EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:<> ]+?)\s+(\w+)\s*\[\s*\]\s*;")


def rewrite(text):
    text = rewrite_launches(text)
    text = re.sub(r"cudaFuncSetAttribute\(\s*([^,]+?)\s*,", r'::fcemu::func_set_attribute(__FILE__ ":\1",', text)
    text = EXTERN_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(::fcemu::dynamic_shared());", text)
    text, registrations = re.subn(r"TORCH_LIBRARY_IMPL\(\s*fastconv\s*,\s*CUDA\s*,", "TORCH_LIBRARY_IMPL(fastconv, CPU,", text)
    return "#include <fastconv_cuda_emu.h>\n" + text, registrations


def copy_tree(tree):
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        source = ROOT / name
        if not source.is_file():
            continue
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)


def build(tree, asan=False):
    tree.mkdir(parents=True, exist_ok=True)
    copy_tree(tree)
    sources = tree / "build" / "emu_src"
    sources.mkdir(parents=True, exist_ok=True)
    emulated = []
    for path in sorted((tree / "csrc" / "cuda").iterdir()):
        if path.name == "build_info.cu" or path.suffix not in (".cu", ".cuh"):
            continue
        text, registrations = rewrite(path.read_text())
        name = path.name if path.suffix == ".cuh" else path.stem + ".cpp"
        target = sources / name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
        if path.suffix == ".cu":
            if registrations != 1:
                sys.exit(f"{path.name}: expected one TORCH_LIBRARY_IMPL(fastconv, CUDA, ...), found {registrations}")
            emulated.append(str(target))
    objects = tree / "build" / ("emu_obj_asan" if asan else "emu_obj")
    objects.mkdir(parents=True, exist_ok=True)
    # AddressSanitizer: every tensor the kernels touch is a CPU heap allocation with red zones around it, so an
    # out-of-bounds global read or write is reported where compute-sanitizer's memcheck would report it.
    sanitize = ["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else []
    cpp_extension.load(
        name="_C",
        sources=[str(tree / "csrc" / "fastconv.cpp"), str(tree / "csrc" / "autograd.cpp"), str(HERE / "runtime.cpp")]
        + emulated,
        extra_include_paths=[str(HERE / "include"), str(tree / "csrc"), str(tree / "csrc" / "include")],
        extra_cflags=["-O2", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-DFASTCONV_CUDA_EMULATION"] + sanitize,
        extra_ldflags=sanitize,
        build_directory=str(objects),
        is_python_module=False,
        verbose=False,
    )
    library = objects / "_C.so"
    shutil.copyfile(library, tree / "fastconv" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX")))
    (tree / "fastconv" / "_build_info.py").write_text(
        "# Generated by scripts/cuda_emu/build.py: the CUDA kernels emulated on the CPU, as the CPU backend.\n"
        f"BUILD = {{'torch_version': {torch.__version__!r}, 'torch_cuda': {torch.version.cuda!r}, "
        "'with_cuda': False, 'cuda_arch_list': None, 'cuda_emulation': True}\n"
    )
    return tree


def asan_environment():
    """The environment an --asan build is loaded in: ASan's runtime preloaded (Python is not instrumented)."""
    # libstdc++ too: ASan resolves the real __cxa_throw when it starts, and Triton's extension throws on import.
    libraries = [
        subprocess.run(["c++", f"-print-file-name={name}"], check=True, capture_output=True, text=True).stdout.strip()
        for name in ("libasan.so", "libstdc++.so.6")
    ]
    return {"LD_PRELOAD": " ".join(libraries), "ASAN_OPTIONS": "detect_leaks=0"}


if __name__ == "__main__":
    if "--asan" in sys.argv[1:] and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **asan_environment()})
    arguments = [a for a in sys.argv[1:] if a != "--asan"]
    target = pathlib.Path(arguments[0]) if arguments else ROOT / "build" / "cuda_emu"
    print(build(target.resolve(), asan="--asan" in sys.argv[1:]))
