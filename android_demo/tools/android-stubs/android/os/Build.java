// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.os;

public class Build {
    public Build() { throw new RuntimeException("Stub!"); }
    // Blank finals (not compile-time constants), as in the framework: read at run time, never inlined.
    public static final String HARDWARE;
    public static final String MANUFACTURER;
    public static final String MODEL;
    public static final String SOC_MODEL;
    public static final String[] SUPPORTED_ABIS;
    static { HARDWARE = null; MANUFACTURER = null; MODEL = null; SOC_MODEL = null; SUPPORTED_ABIS = null; }

    public static class VERSION {
        public VERSION() { throw new RuntimeException("Stub!"); }
        public static final int SDK_INT;
        static { SDK_INT = 0; }
    }
}
