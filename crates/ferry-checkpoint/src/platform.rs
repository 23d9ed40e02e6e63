//! This host's fingerprint: what an image taken here needs, and what an image must need to
//! run here.

use ferry_image::{Platform, VdsoFingerprint, XsaveLayout};
use ferry_sys::host;
use xxhash_rust::xxh3::xxh3_64;

/// The platform of this host, as images record it (computed once).
pub fn host_platform() -> Result<Platform, ferry_sys::SysError> {
    static PLATFORM: std::sync::OnceLock<Platform> = std::sync::OnceLock::new();
    if let Some(p) = PLATFORM.get() {
        return Ok(p.clone());
    }
    let p = compute()?;
    Ok(PLATFORM.get_or_init(|| p).clone())
}

fn compute() -> Result<Platform, ferry_sys::SysError> {
    let (arch, kernel_release) = host::uname();
    let vdso = host::own_vdso()?.map(|(area, code)| VdsoFingerprint {
        vvar_pages: area.vvar_pages,
        vvar_vclock_pages: area.vvar_vclock_pages,
        vdso_pages: area.vdso_pages,
        code_hash: xxh3_64(&code),
    });
    let x = host::xsave()?;
    Ok(Platform {
        arch,
        kernel_release,
        vdso,
        xsave: XsaveLayout {
            features: x.features,
            size: x.size,
        },
    })
}
