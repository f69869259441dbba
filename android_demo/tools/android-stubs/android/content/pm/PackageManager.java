// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.content.pm;

public abstract class PackageManager {
    public PackageManager() { throw new RuntimeException("Stub!"); }
    public abstract PackageInfo getPackageInfo(String packageName, int flags) throws NameNotFoundException;

    public static class NameNotFoundException extends android.util.AndroidException {
        public NameNotFoundException() { throw new RuntimeException("Stub!"); }
        public NameNotFoundException(String name) { throw new RuntimeException("Stub!"); }
    }
}
