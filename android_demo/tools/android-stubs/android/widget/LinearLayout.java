// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

import android.content.Context;

public class LinearLayout extends android.view.ViewGroup {
    public LinearLayout(Context context) { super(context); throw new RuntimeException("Stub!"); }
}
