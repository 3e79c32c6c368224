# Sourced by cross/build and cross/test (bash). Sets, per Raspberry Pi target, the linker,
# the C compiler and archiver the build scripts (cc crate: rusqlite's bundled SQLite, ring's C
# and assembly, dbus-sys's vendored libdbus) use, and the qemu-user runner for test binaries.
# Nothing global is changed: no ~/.cargo/config edits, only this process's environment.

# Rust target triple -> Debian cross toolchain prefix.
cross_prefix() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) echo "cross: unsupported target $1" >&2; return 1 ;;
    esac
}

# Rust target triple -> qemu-user binary.
cross_qemu() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo qemu-aarch64 ;;
        armv7-unknown-linux-gnueabihf) echo qemu-arm ;;
        *) echo "cross: unsupported target $1" >&2; return 1 ;;
    esac
}

# Debian packages the target needs (cross gcc + the target's libc headers and crt files).
cross_apt_packages() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
        armv7-unknown-linux-gnueabihf) echo gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ;;
        *) echo "cross: unsupported target $1" >&2; return 1 ;;
    esac
}

# Exports CARGO_TARGET_<TRIPLE>_LINKER/_RUNNER, CC_<triple>, AR_<triple> for one target.
cross_env() {
    local triple="$1" prefix qemu up low
    prefix=$(cross_prefix "$triple")
    qemu=$(cross_qemu "$triple")
    up=$(echo "$triple" | tr 'a-z-' 'A-Z_')
    low=$(echo "$triple" | tr '-' '_')
    export "CARGO_TARGET_${up}_LINKER=${prefix}-gcc"
    # qemu-user runs the target's dynamically linked binaries with the cross libc as sysroot.
    export "CARGO_TARGET_${up}_RUNNER=${qemu} -L /usr/${prefix}"
    export "CC_${low}=${prefix}-gcc"
    export "AR_${low}=${prefix}-ar"
}

CROSS_TARGETS_DEFAULT="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"
