//! Generated inputs of the repository's workloads, shared by ferry's tests and benchmarks: a
//! small C project for `make -j2`, and a large input file for a shell pipeline.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes a C project into `dir` (made if missing): `main.c`, eight units of 1200 lines of
/// arithmetic each (about a second of `cc1` apiece at `-O2`), and a `Makefile` whose `prog`
/// prints one number. Built with `make -j2`, two compilers run at once for seconds.
pub fn write_c_project(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut main = String::from("#include <stdio.h>\n");
    let mut calls = String::new();
    for unit in 1..=8u64 {
        let mut src =
            format!("unsigned long unit{unit}(unsigned long x)\n{{\n\tunsigned long a = x;\n");
        for k in 0..1200u64 {
            src.push_str(&format!(
                "\ta = a * {}UL + (a >> {}) ^ {}UL;\n",
                k * 7 + unit * 13 + 1,
                k % 13 + 1,
                k * 31 + unit
            ));
        }
        src.push_str("\treturn a;\n}\n");
        fs::write(dir.join(format!("unit{unit}.c")), src)?;
        main.push_str(&format!("unsigned long unit{unit}(unsigned long);\n"));
        calls.push_str(&format!("\tx = unit{unit}(x);\n"));
    }
    main.push_str(&format!(
        "int main(void)\n{{\n\tunsigned long x = 1;\n{calls}\tprintf(\"%lu\\n\", x);\n\treturn 0;\n}}\n"
    ));
    fs::write(dir.join("main.c"), main)?;
    let objs: Vec<String> = std::iter::once("main.o".to_string())
        .chain((1..=8).map(|u| format!("unit{u}.o")))
        .collect();
    fs::write(
        dir.join("Makefile"),
        format!(
            "OBJS = {}\nprog: $(OBJS)\n\tgcc -o $@ $(OBJS)\n%.o: %.c\n\tgcc -O2 -c $< -o $@\n",
            objs.join(" ")
        ),
    )
}

/// Writes `mib` MiB to `path`: one pseudo-random 1 MiB block (the same every time), repeated.
pub fn write_repeated_block_file(path: &Path, mib: u64) -> std::io::Result<()> {
    // splitmix64: deterministic, and data gzip cannot shrink.
    let mut state: u64 = 0x5a5a;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let block: Vec<u8> = (0..(1 << 20) / 8)
        .flat_map(|_| next().to_le_bytes())
        .collect();
    let mut w = BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
    for _ in 0..mib {
        w.write_all(&block)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_inputs_are_what_the_workloads_expect() {
        let dir = std::env::temp_dir().join(format!("ferry-workloads-{}", std::process::id()));
        write_c_project(&dir.join("src")).unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.join("src"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 10, "{names:?}");
        assert!(names.contains(&"Makefile".to_string()) && names.contains(&"unit8.c".to_string()));
        let input = dir.join("input");
        write_repeated_block_file(&input, 3).unwrap();
        let bytes = fs::read(&input).unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert_eq!(bytes[..1 << 20], bytes[2 << 20..]);
        assert_ne!(bytes[..8], bytes[8..16]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
