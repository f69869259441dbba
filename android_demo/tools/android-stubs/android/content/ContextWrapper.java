// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.content;

import android.content.pm.PackageManager;
import java.io.File;

public class ContextWrapper extends Context {
    public ContextWrapper(Context base) { throw new RuntimeException("Stub!"); }
    @Override public PackageManager getPackageManager() { throw new RuntimeException("Stub!"); }
    @Override public String getPackageName() { throw new RuntimeException("Stub!"); }
    @Override public File getFilesDir() { throw new RuntimeException("Stub!"); }
    @Override public File getExternalFilesDir(String type) { throw new RuntimeException("Stub!"); }
}
