// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.content.pm;

public class PackageInfo {
    public String packageName;
    public String versionName;
    public PackageInfo() { throw new RuntimeException("Stub!"); }
}
